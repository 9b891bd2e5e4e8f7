"""Lightning callbacks of the project's own (the stock ones are configured directly in conf/callbacks/)."""
