"""The rotation commands' work: ``begin``/``finish``, ``rotate auto``, what
``creds`` hands out and in which formats, what ``status``/``check`` report."""
