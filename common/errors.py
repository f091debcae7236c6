"""User mistakes get one sentence and a non-zero exit; bugs still raise with a traceback."""
import sys
from functools import wraps


class UserError(ValueError):
    """Something the user can fix (a flag, a path, a file): the message says what is wrong and what to do."""


def exit_on_user_error(main):
    """Wrap a script's main(): a UserError prints its sentence to stderr and exits with status 2."""
    @wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    return run
