"""The async path is real: a task sent from the app crosses Redis to a separate worker process,
which reads committed rows from the test database and does its work (here, an email)."""
import pytest

from billing.tasks import send_org_admin_email
from organizations.models import Role
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory

from .helpers import wait_until


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_task_runs_in_a_real_worker_against_the_test_database(celery_worker):
    org = OrganizationFactory(name="Worker Test Org")
    MembershipFactory(organization=org, user=UserFactory(username="own@w.test"), role=Role.OWNER)
    MembershipFactory(organization=org, user=UserFactory(username="adm@w.test"), role=Role.ADMIN)
    MembershipFactory(organization=org, user=UserFactory(username="mem@w.test"), role=Role.MEMBER)

    send_org_admin_email.delay(str(org.pk), "usage_80", {"tier": "small", "percent": 80})

    sent = wait_until(lambda: [m for m in celery_worker.outbox() if "Worker Test Org" in m.get("Subject", "")],
                      timeout=30, message="the worker's email")
    assert sorted(sent[0]["To"].replace(" ", "").split(",")) == ["adm@w.test", "own@w.test"]
    assert celery_worker.process.pid and celery_worker.alive()
