from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("usage", "0006_idempotency_key_binary"),
    ]

    operations = [
        migrations.AddField(
            model_name="billableaction",
            name="request_fingerprint",
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
    ]
