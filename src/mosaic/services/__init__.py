"""Services: the only owners of index + storage transactions; every door calls these."""
