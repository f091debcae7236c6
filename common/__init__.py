"""Small helpers every room uses: user-facing errors, atomic files, downloads."""
from common.errors import UserError, exit_on_user_error
from common.files import atomic_path, cache_dir
from common.download import download

__all__ = ["UserError", "exit_on_user_error", "atomic_path", "cache_dir", "download"]
