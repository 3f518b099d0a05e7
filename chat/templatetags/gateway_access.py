"""`{% load gateway_access %}`: the places the signed-in person may use (gateway.home), for the
menus of the admin, the reports and the 403 page."""
from django import template

from gateway.home import destinations

register = template.Library()


@register.simple_tag
def places_for(user) -> list:
    """`{% places_for user as places %}`: the Destination list of gateway.home.destinations."""
    return destinations(user)
