import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings.local")

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

try:
    application = get_wsgi_application()
except ImproperlyConfigured as exc:
    sys.stderr.write(f"configuration error: {exc}\n")
    raise SystemExit(2) from None
