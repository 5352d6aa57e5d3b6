"""segrl plugin for verl 0.9.1 (a package; the plugin code is in :mod:`segrl.integrations.verl.advantage` for now).

``from segrl.integrations.verl import X``, ``VERL_USE_EXTERNAL_MODULES=segrl.integrations.verl`` and
``pkg://segrl.integrations.verl`` keep working: every public name is re-exported here, and importing
the submodule registers everything with verl.
"""

from segrl.integrations.verl.advantage import *  # noqa: F401,F403
from segrl.integrations.verl.advantage import __all__, register_all  # noqa: F401
