"""The one exception type for problems a user can fix (bad path, malformed file, bad flag).

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class UserError(Exception):
    """A problem the user can fix; its message names the file, field or flag and what to do."""
