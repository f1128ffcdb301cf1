"""One guarded request on the wire: routing, reading, holding, releasing or refusing; the proxy."""
