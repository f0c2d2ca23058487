"""AI engine hooks: subscriptions, deliveries, results. Built in its own issue."""
