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
package gateway.authz

# The declared target the request names; undefined for any other name.
target := data.gateway.targets[input.target]

# Routes are the target's operations flattened to one entry per (operation, path pattern).
# A route matches when the path has exactly the pattern's "length" segments (or more, for a
# pattern that ended in "**", marked "many" and stored without the "**") and every literal
# segment is equal, byte for byte, at its position. "*" segments are not in "literals": they
# match any one segment. "last" is length - 1, precomputed by the gateway.
#
# This module deliberately uses no function calls (built-in or user-defined) and no `in`
# membership test: the embedded engine (rego-cpp 1.5) mis-evaluates both under `with`, which
# the policy tests rely on. Presence checks on input.path_segments[i] replace count().

# The pattern "/" (no segments): only the path "/".
path_routes contains route if {
	some route in target.routes
	not route.many
	route.length == 0
	route.trailing_slash == input.trailing_slash
	not input.path_segments[0]
}

# A pattern of one or more segments without "**": exactly that many segments.
path_routes contains route if {
	some route in target.routes
	not route.many
	input.path_segments[route.last]
	not input.path_segments[route.length]
	route.trailing_slash == input.trailing_slash
	every literal in route.literals {
		input.path_segments[literal[0]] == literal[1]
	}
}

# A pattern ending in "**": at least one segment more than the pattern's other segments.
path_routes contains route if {
	some route in target.routes
	route.many
	input.path_segments[route.length]
	every literal in route.literals {
		input.path_segments[literal[0]] == literal[1]
	}
}

method_routes contains route if {
	some route in path_routes
	route.methods[input.method]
}

# Operations that grant this exact request: path, method and stream kind. A WebSocket stream
# needs an operation that says websocket: true.
granted contains route.operation if {
	some route in method_routes
	not input.websocket
}

granted contains route.operation if {
	some route in method_routes
	route.websocket
}

has_path_route if some _ in path_routes

has_method_route if some _ in method_routes

has_grant if some _ in granted

granted_twice if {
	some a in granted
	some b in granted
	a != b
}

# Reasons that deny a request even when an operation grants it.
vetoes contains "unsigned" if not input.signature.verified == true

vetoes contains "empty_segment" if {
	some s in input.path_segments
	s == ""
}

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

has_veto if some _ in vetoes

# Why a request was not granted, from the most general to the most specific.
reasons contains "unknown_target" if not target

reasons contains "stream_only_target" if {
	target.scheme == "tcp"
	not input.websocket == true
}

reasons contains "path_not_allowed" if {
	target.scheme != "tcp"
	not has_path_route
}

reasons contains "method_not_allowed" if {
	has_path_route
	not has_method_route
}

reasons contains "websocket_not_allowed" if {
	has_method_route
	not has_grant
}

reasons contains "ambiguous_operation" if granted_twice

reasons contains reason if some reason in vetoes

default target_name := null

target_name := input.target if target

default operation := null

operation := name if {
	some name in granted
	not granted_twice
}

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
	has_grant
	not granted_twice
	not has_veto
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
	not has_veto
} else := {
	"allow": false,
	"target": target_name,
	"operation": operation,
	"reasons": reasons,
	"revision": data.gateway.revision,
}
