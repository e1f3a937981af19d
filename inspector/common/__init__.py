"""Helpers every layer may use, and that use nothing of the project but its errors: the one atomic file
writer (atomic), the one way input files are read (reading), folders that must not mix (folders), CSV
for people (spreadsheet), SIGTERM/SIGINT as a stop request (stop), progress lines (progress)."""
