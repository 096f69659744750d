# Tests of gateway.authz, run by `gateway policy-test` (and in CI).
#
# Each test is a case: an allow-list written exactly like `targets` in gateway.yaml, an input
# document, and the decision keys expected. The gateway evaluates the case with the embedded
# engine, the same way it decides a relayed request (see docs/policy.md, "Policy tests").
# Because every case brings its own targets, these tests hold whatever gateway.yaml says.
package gateway.authz_test

targets := {
	"erp": {
		"scheme": "https",
		"host": "erp.corp.local",
		"port": 8443,
		"operations": [
			{"name": "read-orders", "methods": ["GET", "POST"], "paths": ["/api/*"]},
			{"name": "events", "methods": ["GET"], "paths": ["/events/**"], "websocket": true},
			{"name": "root", "methods": ["HEAD"], "paths": ["/"]},
		],
	},
	"ldap": {"scheme": "tcp", "host": "dc.corp.local", "port": 636},
}

# An input document as the gateway builds it (schemas/policy-input.schema.json).
request(target, method, segments, trailing) := {
	"target": target,
	"method": method,
	"path": "(not read by the policy)",
	"path_segments": segments,
	"trailing_slash": trailing,
	"query": null,
	"header_names": [],
	"websocket": false,
	"signature": {"verified": true, "keyid": "k1"},
}

get(segments) := request("erp", "GET", segments, false)

stream(target, segments) := object.union(request(target, "GET", segments, false), {"websocket": true})

allowed(input_doc, operation) := {
	"targets": targets,
	"input": input_doc,
	"expect": {"allow": true, "operation": operation, "reasons": []},
}

denied(input_doc, reasons) := {
	"targets": targets,
	"input": input_doc,
	"expect": {"allow": false, "reasons": reasons},
}

test_get_one_segment_under_api_allowed := allowed(get(["api", "orders"]), "read-orders")

test_post_allowed := allowed(request("erp", "POST", ["api", "orders"], false), "read-orders")

test_delete_is_method_not_allowed := denied(
	request("erp", "DELETE", ["api", "orders"], false),
	["method_not_allowed"],
)

test_star_is_segment_aware := denied(get(["apiadmin"]), ["path_not_allowed"])

test_star_is_segment_aware_with_suffix := denied(get(["api-internal", "x"]), ["path_not_allowed"])

test_star_needs_a_segment := denied(get(["api"]), ["path_not_allowed"])

test_trailing_slash_after_prefix_not_matched := denied(
	request("erp", "GET", ["api"], true),
	["path_not_allowed"],
)

test_trailing_slash_is_significant := denied(
	request("erp", "GET", ["api", "orders"], true),
	["path_not_allowed"],
)

test_star_is_one_segment_only := denied(get(["api", "orders", "17"]), ["path_not_allowed"])

test_literals_are_case_sensitive := denied(get(["API", "orders"]), ["path_not_allowed"])

test_many_matches_one_segment := allowed(get(["events", "a"]), "events")

test_many_matches_several_segments := allowed(stream("erp", ["events", "a", "b"]), "events")

test_many_needs_at_least_one_segment := denied(get(["events"]), ["path_not_allowed"])

test_websocket_needs_an_operation_that_says_so := denied(
	stream("erp", ["api", "orders"]),
	["websocket_not_allowed"],
)

test_root_pattern_matches_root := allowed(request("erp", "HEAD", [], false), "root")

test_root_pattern_matches_only_root := denied(
	request("erp", "HEAD", ["x"], false),
	["path_not_allowed"],
)

test_unknown_target_denied := {
	"targets": targets,
	"input": request("crm", "GET", ["api", "orders"], false),
	"expect": {"allow": false, "target": null, "operation": null, "reasons": ["unknown_target"]},
}

test_unsigned_denied_even_when_granted := {
	"targets": targets,
	"input": object.union(get(["api", "orders"]), {"signature": {"verified": false, "keyid": null}}),
	"expect": {"allow": false, "operation": "read-orders", "reasons": ["unsigned"]},
}

test_missing_signature_denied := denied(object.remove(get(["api", "orders"]), ["signature"]), ["unsigned"])

# "*" would match an empty segment; the canonicaliser never produces one, and the policy
# refuses it anyway.
test_empty_segment_denied := denied(get(["api", ""]), ["empty_segment"])

test_tcp_target_allows_streams := {
	"targets": targets,
	"input": stream("ldap", []),
	"expect": {"allow": true, "target": "ldap", "operation": null, "reasons": []},
}

test_tcp_target_refuses_http := denied(request("ldap", "GET", [], false), ["stream_only_target"])

test_decision_carries_the_data_revision := {
	"targets": targets,
	"input": get(["api", "orders"]),
	"expect": {"revision": "policy-test"},
}

test_deny_reasons_are_sorted_and_complete := denied(
	object.union(request("erp", "DELETE", ["api", "orders"], false), {"signature": {"verified": false}}),
	["method_not_allowed", "unsigned"],
)

test_extension_veto_denies_a_granted_request := {
	"targets": targets,
	"extensions": {"window": {"deny": ["outside_change_window"]}},
	"input": get(["api", "orders"]),
	"expect": {"allow": false, "operation": "read-orders", "reasons": ["outside_change_window"]},
}

test_extension_without_denies_changes_nothing := {
	"targets": targets,
	"extensions": {"window": {"deny": []}, "helpers": {"business_hours": [8, 18]}},
	"input": get(["api", "orders"]),
	"expect": {"allow": true},
}

test_malformed_extension_denies := {
	"targets": targets,
	"extensions": {"window": {"deny": true}},
	"input": get(["api", "orders"]),
	"expect": {"allow": false, "reasons": ["invalid_extension"]},
}

test_two_granting_operations_are_ambiguous := {
	# gateway.yaml refuses overlapping operations; the policy must still not pick one.
	"targets": {"erp": {
		"scheme": "https",
		"host": "erp.corp.local",
		"operations": [
			{"name": "a", "methods": ["GET"], "paths": ["/api/*"]},
			{"name": "b", "methods": ["GET"], "paths": ["/api/orders"]},
		],
	}},
	"input": get(["api", "orders"]),
	"expect": {"allow": false, "operation": null, "reasons": ["ambiguous_operation"]},
}

# --- LDAP operations -------------------------------------------------------------------------
# An LDAP target and operations on it, as gateway/ldap/decide.py builds the input: DNs are
# root-first paths of canonical RDNs (attribute types as OIDs where known, values prepared and
# lower-cased), attribute types lower-case.

ldap_targets := {"directory": {
	"scheme": "ldaps",
	"host": "dc.corp.local",
	"ldap": {
		"bind_identities": {"svc": {"dn": "CN=svc,DC=corp,DC=local", "password": {"env": "PW"}}},
		"never_reachable": ["OU=Tier0,DC=corp,DC=local"],
		"operations": [
			{
				"name": "inventory",
				"kinds": ["search"],
				"subtrees": ["DC=corp,DC=local"],
				"attributes": ["cn", "member"],
			},
			{
				"name": "groups",
				"kinds": ["modify"],
				"subtrees": ["OU=Groups,DC=corp,DC=local"],
				"attributes": ["member"],
				"change_types": ["add", "delete"],
				"bind_as": ["svc"],
			},
		],
	},
}}

corp_local := ["0.9.2342.19200300.100.1.25=local", "0.9.2342.19200300.100.1.25=corp"]

tier0 := array.concat(corp_local, ["2.5.4.11=tier0"])

groups := array.concat(corp_local, ["2.5.4.11=groups"])

ldap_operation(ldap) := {
	"target": "directory",
	"ldap": object.union({"controls": []}, ldap),
	"connection": {
		"bound": true,
		"injected": true,
		"identity": "svc",
		"dn_path": null,
		"name": "",
		"inner_tls": true,
	},
	"signature": {"verified": true, "keyid": "k1"},
}

ldap_search(path, attributes, filter_attributes) := ldap_search_controls(
	path,
	attributes,
	filter_attributes,
	[],
)

ldap_search_controls(path, attributes, filter_attributes, controls) := ldap_operation({
	"operation": "search",
	"controls": controls,
	"dn_path": path,
	"scope": "sub",
	"size_limit": 0,
	"time_limit": 0,
	"types_only": false,
	"selection": {"all_user": false, "all_operational": false, "attributes": attributes},
	"filter": {"attributes": filter_attributes, "terms": 1, "depth": 1, "extensible_rules": []},
})

ldap_modify(path, changes) := ldap_operation({
	"operation": "modify",
	"dn_path": path,
	"changes": changes,
	"attributes": [change.attribute | some change in changes],
})

ldap_case(input_doc, expect) := {"targets": ldap_targets, "input": input_doc, "expect": expect}

test_ldap_search_in_subtree_allowed := ldap_case(
	ldap_search(corp_local, ["cn"], ["objectclass"]),
	{"allow": true, "operation": "inventory", "reasons": []},
)

test_ldap_search_strips_never_returned_and_hides_tier0 := ldap_case(
	ldap_search(corp_local, ["cn"], ["objectclass"]),
	{"ldap": {"strip_attributes": ldap_default_strip, "hidden_subtrees": [tier0]}},
)

test_ldap_search_in_never_reachable_denied := ldap_case(
	ldap_search(array.concat(tier0, ["2.5.4.3=dc1"]), ["cn"], ["objectclass"]),
	{"allow": false, "operation": null, "reasons": ["ldap_never_reachable"]},
)

# An RDN whose value merely starts like the protected one is not inside it.
test_ldap_search_beside_never_reachable_allowed := ldap_case(
	ldap_search(array.concat(corp_local, ["2.5.4.11=tier0-lab"]), ["cn"], ["objectclass"]),
	{"allow": true, "ldap": {"strip_attributes": ldap_default_strip, "hidden_subtrees": []}},
)

ldap_default_strip := [
	"dbcspwd", "lmpwdhistory", "ms-mcs-admpwd", "mslaps-encrypteddsrmpassword",
	"mslaps-encrypteddsrmpasswordhistory", "mslaps-encryptedpassword",
	"mslaps-encryptedpasswordhistory", "mslaps-password", "ntpwdhistory",
	"supplementalcredentials", "unicodepwd", "userpassword",
]

test_ldap_requesting_a_never_returned_attribute_denied := ldap_case(
	ldap_search(corp_local, ["cn", "ms-mcs-admpwd"], ["objectclass"]),
	{"allow": false, "reasons": ["ldap_attribute_never_returned"]},
)

test_ldap_filter_on_a_never_returned_attribute_denied := ldap_case(
	ldap_search(corp_local, ["cn"], ["ms-mcs-admpwd", "objectclass"]),
	{"allow": false, "reasons": ["ldap_filter_never_returned"]},
)

test_ldap_attribute_outside_the_rule_denied := ldap_case(
	ldap_search(corp_local, ["cn", "description"], ["objectclass"]),
	{"allow": false, "reasons": ["ldap_attribute_not_granted"]},
)

test_ldap_unnamed_oid_attribute_needs_listing := ldap_case(
	ldap_search(corp_local, ["1.2.840.113556.1.4.7000"], ["objectclass"]),
	{"allow": false, "reasons": ["ldap_attribute_not_granted"]},
)

test_ldap_search_outside_subtree_denied := ldap_case(
	ldap_search(["0.9.2342.19200300.100.1.25=other"], ["cn"], []),
	{"allow": false, "reasons": ["ldap_subtree_not_granted"]},
)

test_ldap_control_not_listed_denied := ldap_case(
	ldap_search_controls(corp_local, ["cn"], [], [{"oid": "1.2.840.113556.1.4.417", "critical": true}]),
	{"allow": false, "reasons": ["ldap_control_refused"]},
)

test_ldap_paged_results_allowed_by_default := ldap_case(
	ldap_search_controls(corp_local, ["cn"], [], [{"oid": "1.2.840.113556.1.4.319", "critical": false}]),
	{"allow": true},
)

test_ldap_unbound_search_denied := ldap_case(
	object.union(ldap_search(corp_local, ["cn"], []), {"connection": {
		"bound": false,
		"injected": false,
		"identity": null,
		"dn_path": null,
		"name": "",
		"inner_tls": true,
	}}),
	{"allow": false, "reasons": ["ldap_anonymous_refused"]},
)

test_ldap_group_member_add_allowed := ldap_case(
	ldap_modify(array.concat(groups, ["2.5.4.3=sales"]), [{"type": "add", "attribute": "member"}]),
	{"allow": true, "operation": "groups"},
)

test_ldap_group_member_replace_denied := ldap_case(
	ldap_modify(array.concat(groups, ["2.5.4.3=sales"]), [{"type": "replace", "attribute": "member"}]),
	{"allow": false, "reasons": ["ldap_change_not_granted"]},
)

test_ldap_operation_no_rule_grants_denied := ldap_case(
	ldap_operation({"operation": "delete", "dn_path": groups}),
	{"allow": false, "operation": null, "reasons": ["ldap_not_granted"]},
)

test_ldap_starttls_from_the_saas_denied := ldap_case(
	ldap_operation({"operation": "extended", "extended_oid": "1.3.6.1.4.1.1466.20037"}),
	{"allow": false, "reasons": ["ldap_extended_refused", "ldap_starttls_refused"]},
)

# The stream that carries the operations is granted by the target, like a tcp stream.
test_ldap_stream_to_an_ldap_target_allowed := {
	"targets": ldap_targets,
	"input": object.union(request("directory", "GET", [], false), {"websocket": true}),
	"expect": {"allow": true, "operation": null},
}

test_ldap_http_request_to_an_ldap_target_denied := {
	"targets": ldap_targets,
	"input": request("directory", "GET", ["x"], false),
	"expect": {"allow": false, "reasons": ["stream_only_target"]},
}

# The same kind of case written in words: "ldap" describes the operation (target, operation, dn,
# attributes, scope, filter, changes, bound_as, ...) and the gateway builds the input exactly as
# the LDAP proxy builds it for the same PDU, DN preparation included.
ldap_words(question, expect) := {"targets": ldap_targets, "ldap": question, "expect": expect}

test_ldap_in_words_search_allowed := ldap_words(
	{
		"target": "directory",
		"operation": "search",
		"dn": "dc=CORP, dc=Local",
		"attributes": ["CN", "member;range=0-1499"],
		"filter": "(&(objectClass=group)(cn=Sales*))",
		"bound_as": "svc",
	},
	{"allow": true, "operation": "inventory"},
)

test_ldap_in_words_tier0_spelled_differently_denied := ldap_words(
	{
		"target": "directory",
		"operation": "search",
		"dn": "CN=dc1,ou = TIER\\30 ,DC=corp,DC=local",
		"attributes": ["cn"],
		"bound_as": "svc",
	},
	{"allow": false, "reasons": ["ldap_never_reachable"]},
)

test_ldap_in_words_modify_add_member_allowed := ldap_words(
	{
		"target": "directory",
		"operation": "modify",
		"dn": "CN=Sales,OU=Groups,DC=corp,DC=local",
		"changes": [{"type": "add", "attribute": "member"}],
		"bound_as": "svc",
	},
	{"allow": true, "operation": "groups"},
)

test_ldap_in_words_guid_dn_refused := ldap_words(
	{
		"target": "directory",
		"operation": "search",
		"dn": "<GUID=0123456789abcdef0123456789abcdef>",
		"bound_as": "svc",
	},
	{"allow": false, "reasons": ["ldap_dn_extended_refused"]},
)
