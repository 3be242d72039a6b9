"""Real data files that installed packages ship, found without importing those packages."""

import importlib.util
import os


def installed_package_file(package: str, *relative_path: str) -> str | None:
    """The path of a data file inside an installed package, or None when it is not installed.

    The package is located with importlib's finder only, so its __init__ (and whatever heavy
    dependencies it imports) never runs.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for package_dir in list(spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(package_dir, *relative_path)
        if os.path.isfile(candidate):
            return candidate
    return None
