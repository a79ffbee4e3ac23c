import pytest

from organizations.models import ApiKey
from organizations.services import api_key_authenticate, api_key_create, api_key_revoke

from .factories import OrganizationFactory

pytestmark = pytest.mark.django_db


def test_key_is_stored_hashed_and_authenticates(now):
    org = OrganizationFactory()
    issued = api_key_create(organization=org, name="ci", now=now)
    row = ApiKey.objects.get(pk=issued.api_key.pk)
    secret = issued.token.split("_", 2)[2]
    assert secret not in row.secret_hash and issued.token not in row.secret_hash
    assert len(row.secret_hash) == 64
    assert api_key_authenticate(token=issued.token).organization_id == org.pk


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret
    lambda t: "bk_ffffffffffff_" + t.split("_", 2)[2],  # unknown prefix
    lambda t: t.replace("bk_", "xx_", 1),  # wrong scheme
    lambda t: "bk_",  # truncated
    lambda t: "",
])
def test_wrong_tokens_are_refused(now, mangle):
    issued = api_key_create(organization=OrganizationFactory(), name="ci", now=now)
    assert api_key_authenticate(token=mangle(issued.token)) is None


def test_revoked_key_no_longer_authenticates(now):
    org = OrganizationFactory()
    issued = api_key_create(organization=org, name="ci", now=now)
    api_key_revoke(organization=org, key_id=issued.api_key.pk, now=now)
    assert api_key_authenticate(token=issued.token) is None


def test_cannot_revoke_another_orgs_key(now):
    from billing_project.errors import NotFound

    issued = api_key_create(organization=OrganizationFactory(), name="ci", now=now)
    with pytest.raises(NotFound):
        api_key_revoke(organization=OrganizationFactory(), key_id=issued.api_key.pk, now=now)
    assert api_key_authenticate(token=issued.token) is not None
