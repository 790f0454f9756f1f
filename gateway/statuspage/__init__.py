"""The built-in status page at ``/dashboard``: what this replica admitted, queued, refused and
saw throttled per pool, each pool's use against its quota, tenants' budgets, learned quotas
and the quota store's health, as live charts in the browser.

``history.StatusHistory`` samples state the gateway keeps anyway (the metrics' counters, the
usage the gauges' background task refreshes, learned quotas, the failover store's mode) every
few seconds off the request path, and keeps a short bounded history in memory.
``routes.dashboard_router`` serves the page, its login form, its assets (files of this
package: no build step, no CDN) and the JSON it polls, all behind an admin key.
"""
