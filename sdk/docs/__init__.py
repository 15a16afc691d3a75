"""Contract documentation: AsyncAPI, a static HTML site, Markdown, and a compatibility checker.

``svc docs`` and ``svc contracts check`` are the command-line faces of this
package. The pieces, one concept per module:

* :mod:`.collect`: what services, channels, contracts and edge routes exist;
* :mod:`.asyncapi`: the AsyncAPI 3.0.0 document (the source the other renderers read);
* :mod:`.fields`: a payload schema flattened into rows (field, type, required...);
* :mod:`.svg`: the services-and-channels diagram;
* :mod:`.html`, :mod:`.markdown`: the human-readable renderings;
* :mod:`.compat`: breaking-change detection between two AsyncAPI documents;
* :mod:`.undeclared`: the development-mode warning for sends to undeclared channels.
"""

from ..undeclared import UndeclaredSendWarning, warn_if_undeclared
from .collect import ChannelDoc, Route, ServiceDoc, System, collect, routes_of

__all__ = [
    "ChannelDoc",
    "Route",
    "ServiceDoc",
    "System",
    "UndeclaredSendWarning",
    "collect",
    "routes_of",
    "warn_if_undeclared",
]
