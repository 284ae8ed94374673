"""Endpoint discovery: clusters whose endpoints come from a file or are pushed at run time.

A cluster with `discovery` in the config gets one `EndpointFeed`; `Feeds` keeps them in step
with the config across reloads. Feeds hand whole, validated endpoint lists to the runtime's
`TableBuilder.update_endpoints`, which swaps them into the live core cluster (keeping pools
and health of endpoints that stay). Nothing here runs per request.
"""

from .api import ApiFeed
from .base import Apply, EndpointFeed
from .file import FileFeed
from .manager import FEED_TYPES, EndpointSink, Feeds

__all__ = ["FEED_TYPES", "ApiFeed", "Apply", "EndpointFeed", "EndpointSink", "Feeds", "FileFeed"]
