"""Database access: engines, transactions, shared table shapes and schema creation."""
