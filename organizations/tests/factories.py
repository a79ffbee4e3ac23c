from __future__ import annotations

import datetime as dt

import factory
from django.contrib.auth import get_user_model

from organizations.models import Membership, Organization, Role

FIXED_CREATED = dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.timezone.utc)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}@example.test")
    email = factory.SelfAttribute("username")
    password = factory.django.Password("pw-12345-secret")


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    created_at = FIXED_CREATED


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.OWNER
    created_at = FIXED_CREATED
