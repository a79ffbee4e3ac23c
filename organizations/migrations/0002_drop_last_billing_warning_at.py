# Drop Organization.last_billing_warning_at: nothing ever wrote or read it (the warning cooldowns are
# per tier and kind on billing's credit_balances, `warned_<kind>_<tier>_at`).
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("organizations", "0001_initial"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="organization",
            name="last_billing_warning_at",
        ),
    ]
