"""Starting meshserve's processes on one machine: used by `meshserve up` and by the tests."""
