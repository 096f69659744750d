# Example extension (not loaded from here: directories named "examples" are skipped).
# To enable it, copy it and its test to a policy directory, for example policies/.
#
# It refuses every write outside a daily change window, 06:00 to 20:00 UTC. Reads are
# untouched. It can only add a reason to deny; it cannot allow anything.
#
# Note: it reads the clock (time.now_ns), so the gateway turns its decision cache off while
# this module is loaded: equal requests may get different answers at different times.
package gateway_extensions.change_window

writes := {"POST", "PUT", "PATCH", "DELETE"}

deny contains "outside_change_window" if {
	writes[input.method]
	not within_window(time.clock(time.now_ns())[0])
}

# Whether a UTC hour (0-23) lies inside the window; a function of its own so that the test
# next to this file can check the window's edges without depending on the time it runs.
within_window(hour) if {
	hour >= 6
	hour < 20
}
