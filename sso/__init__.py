"""OpenID Connect single sign-on for the admin, the reports and chat (docs/operations.md, Single
sign-on): mozilla-django-oidc's authorization-code flow with PKCE, the gateway's checks of the ID
token (issuer, audience), and IdP groups mapped to staff, superuser and Django groups at every
sign-in. Off unless GATEWAY_SSO_ISSUER is set; local accounts keep signing in with a password."""
