# Tests of the change_window example, run by `gateway policy-test` once both files are copied
# into a policy directory. The window's edges are checked through within_window, so the tests
# pass whatever the time; the last one shows that reads are never refused.
package change_window_test

import data.gateway_extensions.change_window

test_six_is_the_first_hour_inside if change_window.within_window(6)

test_nineteen_is_the_last_hour_inside if change_window.within_window(19)

test_five_is_outside if not change_window.within_window(5)

test_twenty_is_outside if not change_window.within_window(20)

test_reads_are_never_refused if {
	count(change_window.deny) == 0 with input as {"method": "GET"}
}
