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
	target.scheme in stream_schemes
	not input.websocket == true
}

reasons contains "path_not_allowed" if {
	not target.scheme in stream_schemes
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

# Targets that carry streams, not HTTP requests: raw tcp, and LDAP (whose operations inside the
# stream are decided one by one by ldap_decision below).
stream_schemes := {"tcp", "ldap", "ldaps"}

# The decision. An LDAP operation (input.ldap) is decided by the LDAP rules. Otherwise the
# first branch is the common case and is evaluated first, so an allowed request never pays for
# working out the reasons of a deny. A set is written as a sorted array in the JSON result, so
# "reasons" comes out sorted.
decision := ldap_decision if {
	input.ldap.operation
} else := {
	"allow": true,
	"target": input.target,
	"operation": operation,
	"reasons": [],
	"revision": data.gateway.revision,
} if {
	not target.scheme in stream_schemes
	operation
	count(vetoes) == 0
} else := {
	# A stream to a tcp target (SQL, opaque LDAP) or to an LDAP target: the target itself is
	# the grant for opening the stream; an LDAP target's operations are decided one by one.
	"allow": true,
	"target": input.target,
	"operation": null,
	"reasons": [],
	"revision": data.gateway.revision,
} if {
	target.scheme in stream_schemes
	input.websocket == true
	count(vetoes) == 0
} else := {
	"allow": false,
	"target": target_name,
	"operation": operation_name,
	"reasons": reasons,
	"revision": data.gateway.revision,
}

# ---------------------------------------------------------------------------------------------
# LDAP operations (docs/ldap.md). On a stream to an ldap or ldaps target the gateway decides
# every operation with input.ldap: the request as gateway/ldap/policy_input.py reads it (DNs as
# root-first paths of canonical RDNs, attribute types normalised, no secret and no filter value)
# and input.connection (what the stream is bound as, whether the SaaS reached the gateway over
# the inner TLS). The rules are data.gateway.ldap[target] (gateway/policy/data.py), from the
# target's ldap section in gateway.yaml. Deny by default: an operation is allowed when one rule
# grants it whole and no veto applies. Vetoes (never reachable subtrees, never returned
# attributes, controls, StartTLS, anonymous use) win over every rule.
#
# An allowed decision also says what the proxy must hide from the answer: "strip_attributes"
# (attribute types removed from every search result entry) and "hidden_subtrees" (paths of the
# never reachable subtrees the search's scope reaches: their entries are never returned).

ldap_target := data.gateway.ldap[input.target]

# The operation and the connection, each read as a whole (so the decision cache keys on two
# fields rather than on every field of both; the input holds no message id, so equal operations
# share an entry).
ldap_request := input.ldap

ldap_connection := input.connection

ldap_kind := ldap_request.operation

# Kinds of operation that name an entry (ldap_request.dn_path).
ldap_entry_kinds := {"search", "compare", "add", "delete", "modify", "modify_dn"}

# RFC 2696 paged results is in ldap_target.controls already; StartTLS (RFC 4511 4.14) never is.
ldap_starttls := "1.3.6.1.4.1.1466.20037"

# Whether `path` lies in `subtree` (both root-first RDN paths): the subtree's path is a prefix
# of the entry's. RDN sequences, never string suffixes. The root ([]) holds everything, also an
# Active Directory <GUID=...> entry, whose path is null because it names no place.
ldap_within(_, subtree) if count(subtree) == 0

ldap_within(path, subtree) if {
	is_array(path)
	count(path) >= count(subtree)
	array.slice(path, 0, count(subtree)) == subtree
}

ldap_within_any(path, subtrees) if {
	some subtree in subtrees
	ldap_within(path, subtree)
}

# Whether the entry at `path` is above `subtree` (deleting, moving or searching it below reaches
# the subtree).
ldap_above(path, subtree) if {
	is_array(path)
	count(subtree) > count(path)
	array.slice(subtree, 0, count(path)) == path
}

# A dotted OID the gateway could not name (RFC 4512 1.4: a descriptor starts with a letter). It
# might be an alias of a never returned attribute, so only a rule that lists it covers it.
ldap_numeric_oid(attribute) if indexof("0123456789", substring(attribute, 0, 1)) >= 0

ldap_covers(allowed, attribute) if attribute in allowed

ldap_covers(allowed, attribute) if {
	"*" in allowed
	not ldap_numeric_oid(attribute)
}

# Whether the connection is bound as an identity `rule` may be used under.
ldap_bound_as(rule) if rule.bind_as.any

ldap_bound_as(rule) if {
	ldap_connection.injected == true
	ldap_connection.identity in rule.bind_as.identities
}

ldap_bound_as(rule) if {
	ldap_connection.injected == false
	some path in rule.bind_as.dn_paths
	path == ldap_connection.dn_path
}

ldap_bound_as(rule) if {
	ldap_connection.injected == false
	ldap_connection.name in rule.bind_as.names
}

# Rules by index, narrowed step by step (kind, place, identity) so that a deny can say where
# the request fell out.
ldap_kind_rules contains index if {
	some index, rule in ldap_target.rules
	ldap_kind in rule.kinds
}

ldap_placed_rules contains index if {
	some index in ldap_kind_rules
	ldap_kind in ldap_entry_kinds
	ldap_within_any(ldap_request.dn_path, ldap_target.rules[index].subtrees)
}

ldap_placed_rules contains index if {
	some index in ldap_kind_rules
	ldap_kind == "extended"
}

ldap_bound_rules contains index if {
	some index in ldap_placed_rules
	ldap_bound_as(ldap_target.rules[index])
}

# Why a rule that fits kind, place and identity does not grant the request: [index, reason].
ldap_refused contains [index, "ldap_scope_not_granted"] if {
	ldap_kind == "search"
	some index in ldap_bound_rules
	not ldap_request.scope in ldap_target.rules[index].scopes
}

ldap_refused contains [index, "ldap_attribute_not_granted"] if {
	ldap_kind == "search"
	ldap_request.selection.all_user == true
	some index in ldap_bound_rules
	not "*" in ldap_target.rules[index].attributes
}

ldap_refused contains [index, "ldap_attribute_not_granted"] if {
	ldap_kind == "search"
	ldap_request.selection.all_operational == true
	some index in ldap_bound_rules
	not "+" in ldap_target.rules[index].attributes
}

ldap_refused contains [index, "ldap_attribute_not_granted"] if {
	ldap_kind == "search"
	some index in ldap_bound_rules
	some attribute in ldap_request.selection.attributes
	not ldap_covers(ldap_target.rules[index].attributes, attribute)
}

ldap_refused contains [index, "ldap_attribute_not_granted"] if {
	ldap_kind in {"compare", "add"}
	some index in ldap_bound_rules
	some attribute in ldap_request.attributes
	not ldap_covers(ldap_target.rules[index].attributes, attribute)
}

ldap_refused contains [index, "ldap_attribute_not_granted"] if {
	ldap_kind == "modify"
	some index in ldap_bound_rules
	some change in ldap_request.changes
	not ldap_covers(ldap_target.rules[index].attributes, change.attribute)
}

ldap_refused contains [index, "ldap_change_not_granted"] if {
	ldap_kind == "modify"
	some index in ldap_bound_rules
	some change in ldap_request.changes
	not change.type in ldap_target.rules[index].change_types
}

ldap_refused contains [index, "ldap_filter_not_granted"] if {
	ldap_kind == "search"
	some index in ldap_bound_rules
	allowed := ldap_target.rules[index].filter_attributes
	allowed != null
	some attribute in ldap_request.filter.attributes
	not attribute in allowed
}

ldap_refused contains [index, "ldap_filter_not_granted"] if {
	ldap_kind == "search"
	some index in ldap_bound_rules
	ldap_target.rules[index].filter_attributes == null
	some attribute in ldap_request.filter.attributes
	ldap_numeric_oid(attribute)
}

# A cap on the size or time limit: the request must ask for a limit within it (0 is no limit).
ldap_refused contains [index, "ldap_size_limit_not_granted"] if {
	ldap_kind == "search"
	some index in ldap_bound_rules
	ldap_over_cap(ldap_request.size_limit, ldap_target.rules[index].max_size_limit)
}

ldap_refused contains [index, "ldap_time_limit_not_granted"] if {
	ldap_kind == "search"
	some index in ldap_bound_rules
	ldap_over_cap(ldap_request.time_limit, ldap_target.rules[index].max_time_limit)
}

ldap_over_cap(asked, cap) if {
	cap != null
	asked == 0
}

ldap_over_cap(asked, cap) if {
	cap != null
	asked > cap
}

ldap_refused contains [index, "ldap_new_superior_not_granted"] if {
	ldap_kind == "modify_dn"
	some index in ldap_bound_rules
	not ldap_within_any(ldap_request.new_dn_path, ldap_target.rules[index].new_superiors)
}

ldap_refused_index(index) if {
	some pair in ldap_refused
	pair[0] == index
}

ldap_granted_rules contains index if {
	some index in ldap_bound_rules
	not ldap_refused_index(index)
}

# Binds. A name that is a bind identity is a credential injection (the gateway binds with the
# stored password); other names are DNs (matched by path) or user principal names.
ldap_bind_granted_rules contains index if {
	ldap_kind == "bind"
	some index in ldap_kind_rules
	ldap_bind_matches(ldap_target.rules[index])
}

# Only a simple bind is an injection: the gateway cannot put a stored password into SASL
# credentials, and a SASL bind is named by the identity in its credentials (RFC 4513 5.2).
ldap_identity_bind if {
	ldap_request.bind.method == "simple"
	ldap_request.bind.name in ldap_target.identities
}

ldap_bind_matches(rule) if {
	ldap_identity_bind
	ldap_request.bind.name in rule.bind_as.identities
}

ldap_bind_matches(rule) if {
	not ldap_identity_bind
	some path in rule.bind_as.dn_paths
	path == ldap_request.bind.dn_path
}

ldap_bind_matches(rule) if {
	not ldap_identity_bind
	ldap_request.bind.name in rule.bind_as.names
}

# Granted without a rule: an allowed anonymous bind, a SASL bind with a listed mechanism and no
# name (its identity is inside the credentials), and unbind and abandon (which only end things).
ldap_granted_by_target if {
	ldap_kind == "bind"
	ldap_request.bind.anonymous == true
	ldap_target.allow_anonymous == true
}

ldap_granted_by_target if {
	ldap_kind == "bind"
	ldap_request.bind.method == "sasl"
	ldap_request.bind.name == ""
	ldap_request.bind.mechanism in ldap_target.sasl_mechanisms
}

ldap_granted_by_target if ldap_kind in {"unbind", "abandon"}

ldap_grants := ldap_bind_granted_rules if {
	ldap_kind == "bind"
} else := ldap_granted_rules

# The granting rule: the first one in gateway.yaml's order when several grant.
default ldap_operation := null

ldap_operation := ldap_target.rules[min(ldap_grants)].name if count(ldap_grants) > 0

ldap_allowed if ldap_granted_by_target

ldap_allowed if count(ldap_grants) > 0

# Vetoes: each denies whatever a rule grants.
# Whether input.target names an LDAP target. A scalar is tested, not the rules: testing a whole
# array or object costs rego-cpp far more (about 200 us of a decision, benchmarks/bench_ldap_policy.py).
ldap_known if is_boolean(ldap_target.allow_anonymous)

ldap_vetoes contains "unknown_target" if not ldap_known

ldap_vetoes contains reason if {
	not ldap_kind in {"unbind", "abandon"}
	some reason in vetoes
}

ldap_vetoes contains "ldap_control_refused" if {
	not ldap_kind in {"unbind", "abandon"}
	some control in ldap_request.controls
	not control.oid in ldap_target.controls
}

ldap_vetoes contains "ldap_anonymous_refused" if {
	ldap_connection.bound == false
	not ldap_kind in {"bind", "unbind", "abandon"}
	not ldap_target.allow_anonymous == true
}

ldap_vetoes contains "ldap_never_reachable" if {
	ldap_kind in ldap_entry_kinds
	some protected in ldap_target.never_reachable
	ldap_within(ldap_request.dn_path, protected)
}

ldap_vetoes contains "ldap_never_reachable" if {
	ldap_kind in {"delete", "modify_dn"}
	some protected in ldap_target.never_reachable
	ldap_above(ldap_request.dn_path, protected)
}

ldap_vetoes contains "ldap_never_reachable" if {
	ldap_kind == "modify_dn"
	some protected in ldap_target.never_reachable
	ldap_within(ldap_request.new_dn_path, protected)
}

ldap_vetoes contains "ldap_never_reachable" if {
	ldap_kind == "bind"
	some protected in ldap_target.never_reachable
	ldap_within(ldap_request.bind.dn_path, protected)
}

# An AD <GUID=...> DN (allowed by allow_extended_dn) names no place, so it cannot be shown to
# be outside a never reachable subtree.
ldap_vetoes contains "ldap_dn_extended_refused" if {
	ldap_kind in ldap_entry_kinds
	count(ldap_target.never_reachable) > 0
	ldap_placeless
}

ldap_placeless if ldap_request.dn_path == null

ldap_placeless if {
	ldap_kind == "modify_dn"
	ldap_request.new_dn_path == null
}

ldap_vetoes contains "ldap_attribute_never_returned" if {
	ldap_kind == "search"
	some attribute in ldap_request.selection.attributes
	attribute in ldap_target.never_returned
}

ldap_vetoes contains "ldap_attribute_never_returned" if {
	ldap_kind == "compare"
	some attribute in ldap_request.attributes
	attribute in ldap_target.never_returned
}

# A filter on a never returned attribute is an oracle for its value ((ms-Mcs-AdmPwd=a*)).
ldap_vetoes contains "ldap_filter_never_returned" if {
	ldap_kind == "search"
	some attribute in ldap_request.filter.attributes
	attribute in ldap_target.never_returned
}

ldap_vetoes contains "ldap_starttls_refused" if {
	ldap_kind == "extended"
	ldap_request.extended_oid == ldap_starttls
}

ldap_vetoes contains "ldap_extended_refused" if {
	ldap_kind == "extended"
	not ldap_request.extended_oid in ldap_target.extended_operations
}

ldap_vetoes contains "ldap_version_refused" if {
	ldap_kind == "bind"
	ldap_request.bind.version != 3
}

ldap_vetoes contains "ldap_anonymous_refused" if {
	ldap_kind == "bind"
	ldap_request.bind.anonymous == true
	not ldap_target.allow_anonymous == true
}

# A password (or an injected bind) only over the inner TLS from the SaaS to the gateway.
ldap_vetoes contains "ldap_bind_needs_tls" if {
	ldap_kind == "bind"
	ldap_request.bind.method == "simple"
	ldap_request.bind.anonymous == false
	not ldap_connection.inner_tls == true
}

ldap_vetoes contains "ldap_bind_needs_tls" if {
	ldap_kind == "bind"
	ldap_request.bind.mechanism == "PLAIN"
	not ldap_connection.inner_tls == true
}

ldap_vetoes contains "ldap_sasl_mechanism_refused" if {
	ldap_kind == "bind"
	ldap_request.bind.method == "sasl"
	not ldap_request.bind.mechanism in ldap_target.sasl_mechanisms
}

# RFC 4513 5.1.2: a name without a password is an unauthenticated bind, which some directories
# treat as anonymous. Only a bind identity is named without a password (the gateway adds it).
ldap_vetoes contains "ldap_unauthenticated_bind" if {
	ldap_kind == "bind"
	ldap_request.bind.method == "simple"
	ldap_request.bind.name != ""
	ldap_request.bind.empty_credentials == true
	not ldap_request.bind.name in ldap_target.identities
}

# Why nothing granted the request, from the most general to the most specific.
ldap_failures contains "ldap_not_granted" if {
	not ldap_allowed
	count(ldap_kind_rules) == 0
}

ldap_failures contains "ldap_identity_not_granted" if {
	not ldap_allowed
	ldap_kind == "bind"
	count(ldap_kind_rules) > 0
}

ldap_failures contains "ldap_subtree_not_granted" if {
	not ldap_allowed
	ldap_kind != "bind"
	count(ldap_kind_rules) > 0
	count(ldap_placed_rules) == 0
}

ldap_failures contains "ldap_identity_not_granted" if {
	not ldap_allowed
	count(ldap_placed_rules) > 0
	count(ldap_bound_rules) == 0
}

ldap_failures contains pair[1] if {
	not ldap_allowed
	some pair in ldap_refused
}

# What an allowed search must not return.
ldap_hidden contains protected if {
	ldap_kind == "search"
	ldap_request.scope == "sub"
	some protected in ldap_target.never_reachable
	ldap_above(ldap_request.dn_path, protected)
}

ldap_hidden contains protected if {
	ldap_kind == "search"
	ldap_request.scope == "one"
	some protected in ldap_target.never_reachable
	count(protected) == count(ldap_request.dn_path) + 1
	ldap_above(ldap_request.dn_path, protected)
}

# A search that dereferences aliases (RFC 4511 4.5.1.3: derefInSearching, derefFindingBaseObj,
# derefAlways) can reach an entry through an alias wherever it lives: every protected subtree is
# hidden from it, not only the ones below its base. So can a search with a control other than
# paged results (RFC 2696 only pages what base and scope select): AD's attribute scoped query
# returns the entries an attribute of the base names, show deleted reaches the deleted objects
# container, and the gateway does not read control values.
ldap_paged_results := "1.2.840.113556.1.4.319"

ldap_unscoped if ldap_request.deref_aliases != 0

ldap_unscoped if {
	some control in ldap_request.controls
	control.oid != ldap_paged_results
}

ldap_hidden contains protected if {
	ldap_kind == "search"
	ldap_unscoped
	some protected in ldap_target.never_reachable
}

default ldap_strip := []

ldap_strip := ldap_target.never_returned if ldap_kind == "search"

default ldap_target_name := null

ldap_target_name := input.target if ldap_known

# A vetoed operation gives the vetoes only: reasons[0], what the proxy puts in the diagnostic
# message, is then the veto. (Sets come out sorted.)
ldap_reasons := ldap_vetoes if {
	count(ldap_vetoes) > 0
} else := ldap_failures

ldap_decision := {
	"allow": true,
	"target": input.target,
	"operation": ldap_operation,
	"reasons": [],
	"revision": data.gateway.revision,
	"ldap": {"strip_attributes": ldap_strip, "hidden_subtrees": ldap_hidden},
} if {
	count(ldap_vetoes) == 0
	ldap_allowed
} else := {
	"allow": false,
	"target": ldap_target_name,
	"operation": null,
	"reasons": ldap_reasons,
	"revision": data.gateway.revision,
	"ldap": {"strip_attributes": [], "hidden_subtrees": []},
}
