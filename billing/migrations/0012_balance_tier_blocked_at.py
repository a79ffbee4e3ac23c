# Per tier: when the first refusal (402) of the period blocked it, and the tier_blocked email's
# cooldown mark (issue 12 item 10). Nullable columns: no rewrite of existing rows' values.

from django.db import migrations, models

TIERS = ("small", "medium", "large", "xl")


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0011_request_idempotency'),
    ]

    operations = [
        *[migrations.AddField(model_name='creditbalance', name=f'warned_blocked_{t}_at',
                              field=models.DateTimeField(blank=True, null=True)) for t in TIERS],
        *[migrations.AddField(model_name='creditbalance', name=f'blocked_{t}_at',
                              field=models.DateTimeField(blank=True, null=True)) for t in TIERS],
    ]
