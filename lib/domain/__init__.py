"""What the endpoints do: properties, visits, payments and their settlement, the account; the lock policy."""
