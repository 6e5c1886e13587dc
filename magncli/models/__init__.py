"""Model architectures, one file each, registered by name in `registry`."""
from magncli.models.registry import build_model, detect_arch, get_arch, list_archs  # noqa: F401

# Importing a model module registers it.
from magncli.models import magn  # noqa: F401,E402
from magncli.models import dagl  # noqa: F401,E402
from magncli.models import panet  # noqa: F401,E402
from magncli.models import peers  # noqa: F401,E402
