"""What the project ships or keeps as fixtures: the toy CLIPs, the legacy adapter folders."""
