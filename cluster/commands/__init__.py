"""One module per `pisplit` sub-command; each defines `register(subparsers)`."""
