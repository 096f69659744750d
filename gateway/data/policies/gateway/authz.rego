# The gateway's decision on every relayed request and stream. Deny by default.
#
# The allow-list is not written here: it is data.gateway, built by the gateway from the
# validated gateway.yaml (see policies/README.md for its shape). This module only says how a
# request is compared with it. The gateway asks for one document, data.gateway.authz.decision:
#
#   {"allow": bool, "target": name or null, "operation": name or null,
#    "reasons": [stable codes, sorted], "revision": data.gateway.revision}
#
# Matching works on input.path_segments, the path the gateway already checked and split once.
# This module never parses input.path itself (no split, no decoding): the string the policy
# judged must be exactly the string that is forwarded.
#
# Extension point: modules in a package under gateway_extensions (for example
# gateway_extensions.change_window) may define `deny contains "reason" if { ... }`. Every such
# reason turns the decision into a deny. Extensions can only take permissions away; nothing they
# define can grant what the allow-list does not.
#
# The allow-list is read through data.gateway.index, which the gateway groups for speed: targets
# in buckets by the first hex digit of md5(name), and each target's routes by method and by
# segment count. A route is one (operation, path pattern) pair. See gateway/policy/data.py.
package gateway.authz

# The declared target the request names; undefined for any other name.
target := data.gateway.index[substring(crypto.md5(input.target), 0, 1)][input.target]

# The routes of `routes` whose path pattern matches the request path:
# * a pattern without "**" (in exact[n], n = its segment count) needs exactly that many
#   segments and the same trailing slash;
# * a pattern ending in "**" (in many, stored without the "**") needs at least one segment more
#   than the pattern's other segments, whatever the trailing slash.
# Every literal segment must be equal, byte for byte, at its position; "*" segments are not in
# "literals": they match any one segment.
matching(routes) := array.concat(
	[route |
		some route in routes.exact[count(input.path_segments)]
		route.trailing_slash == input.trailing_slash
		literals_match(route)
	],
	[route |
		some route in routes.many
		count(input.path_segments) > route.length
		literals_match(route)
	],
)

literals_match(route) if {
	every literal in route.literals {
		input.path_segments[literal[0]] == literal[1]
	}
}

# Routes that match the path, of any method and of the request's method.
path_routes := matching(target.paths)

default method_routes := []

method_routes := matching(target.methods[input.method])

# Operations that grant this exact request: path, method and stream kind. A WebSocket stream
# needs an operation that says websocket: true.
granted := {route.operation | some route in method_routes; stream_allowed(route)}

stream_allowed(_) if not input.websocket

stream_allowed(route) if route.websocket

# The one granting operation; undefined when none or several grant.
operation := name if {
	count(granted) == 1
	some name in granted
}

# Reasons that deny a request even when an operation grants it.
vetoes contains "unsigned" if not input.signature.verified == true

vetoes contains "empty_segment" if "" in input.path_segments

vetoes contains reason if {
	some extension in data.gateway_extensions
	some reason in extension.deny
	is_string(reason)
}

# An extension whose deny is not a collection of strings is a mistake that must not pass
# silently. (A set is what `deny contains ...` defines; an array is what JSON data can hold.)
vetoes contains "invalid_extension" if {
	some extension in data.gateway_extensions
	not is_set(extension.deny)
	not is_array(extension.deny)
	extension.deny
}

vetoes contains "invalid_extension" if {
	some extension in data.gateway_extensions
	some reason in extension.deny
	not is_string(reason)
}

# Why a request was not granted, from the most general to the most specific. (Conditions test
# target.scheme, not the target object itself: testing a whole object is slow in rego-cpp.)
reasons contains "unknown_target" if not target.scheme

reasons contains "stream_only_target" if {
	target.scheme == "tcp"
	not input.websocket == true
}

reasons contains "path_not_allowed" if {
	target.scheme != "tcp"
	count(path_routes) == 0
}

reasons contains "method_not_allowed" if {
	count(path_routes) > 0
	count(method_routes) == 0
}

reasons contains "websocket_not_allowed" if {
	count(method_routes) > 0
	count(granted) == 0
}

reasons contains "ambiguous_operation" if count(granted) > 1

reasons contains reason if some reason in vetoes

default target_name := null

target_name := input.target if target.scheme

default operation_name := null

operation_name := operation

# The decision. The first branch is the common case and is evaluated first, so an allowed
# request never pays for working out the reasons of a deny. A set is written as a sorted
# array in the JSON result, so "reasons" comes out sorted.
decision := {
	"allow": true,
	"target": input.target,
	"operation": operation,
	"reasons": [],
	"revision": data.gateway.revision,
} if {
	target.scheme != "tcp"
	operation
	count(vetoes) == 0
} else := {
	# A raw stream (LDAP, SQL) to a tcp target: the target itself is the grant.
	"allow": true,
	"target": input.target,
	"operation": null,
	"reasons": [],
	"revision": data.gateway.revision,
} if {
	target.scheme == "tcp"
	input.websocket == true
	count(vetoes) == 0
} else := {
	"allow": false,
	"target": target_name,
	"operation": operation_name,
	"reasons": reasons,
	"revision": data.gateway.revision,
}
