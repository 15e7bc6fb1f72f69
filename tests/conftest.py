pytest_plugins = ["localcache.testing.pytest_plugin"]
