from django.urls import path

from . import views

urlpatterns = [
    path("login", views.LoginView.as_view(), name="login"),
    path("logout", views.LogoutView.as_view(), name="logout"),
    path("settings/api-keys", views.api_keys, name="api-keys"),
    path("settings/api-keys/create", views.api_key_create_view, name="api-key-create"),
    path("settings/api-keys/<int:key_id>/revoke", views.api_key_revoke_view, name="api-key-revoke"),
]
