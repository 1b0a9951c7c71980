"""Generated code for the flotilla.* proto packages."""
