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
