"""Partner reconciliation: a fulfilment partner's statement of what it delivered, compared
line by line with the redemptions the engine says that partner fulfilled.

- :mod:`.statement` reads the statement (CSV) and refuses a bad one, naming the line;
- :mod:`.service` compares it with the redemptions and stores the result with its lines;
- :mod:`.models` holds the two tables, :mod:`.tables` the CSV and XLSX layouts.
"""
