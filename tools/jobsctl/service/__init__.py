"""The local AWS IoT Jobs service: jobs model over SQLite, REST control plane, MQTT data plane.

model        things, groups, jobs, executions: every state transition, one transaction each
store        the SQLite schema
policies     timeouts, abortConfig, jobExecutionsRetryConfig (pure rules the model applies)
scheduling   schedulingConfig, maintenance windows (cron), rollout rates (pure)
rollouts     releasing pending targets as executions (rate, schedule, endBehavior)
jobops       UpdateJob, AssociateTargetsWithJob, DeleteJobExecution
templates    job templates (custom and managed), jobTemplateArn resolution
fleet        group membership and listings, DeleteThing, tags, DescribeEndpoint
events       Jobs events on $aws/events/...
quotas       quota settings and the control plane's request-rate limiter
controlplane the REST-JSON `iot` API (routes and validation from botocore's model), SigV4
operations   the control-plane operations beyond the core set, routed like its own
dataplane    the MQTT device API ($aws/things/NAME/jobs/...)
jobsdata     the `iot-jobs-data` HTTPS device API over the data plane's handlers
service      one running service: the model, both planes, the HTTPS device API, the timer
"""

from .service import Service

__all__ = ["Service"]
