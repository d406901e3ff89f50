"""The member's record: the tables every domain package reads (:mod:`loyalty.records.models`)."""
