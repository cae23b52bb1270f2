from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="TaskRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("task_id", models.CharField(max_length=64)),
                ("worker_pid", models.IntegerField()),
                ("session", models.BigIntegerField(null=True)),
                ("finished", models.BooleanField(default=False)),
            ],
        ),
    ]
