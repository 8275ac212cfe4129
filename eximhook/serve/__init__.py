"""``eximhook serve``: the hooks' operations for Exim's ``${readsocket}``, without a fork."""
