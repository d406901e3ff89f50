"""The pages of the admin UI, one module per area; each view names the roles it serves."""
