"""The local AWS IoT Jobs service: jobs model over SQLite, REST control plane, MQTT data plane.

model        jobs and executions: every state transition, one transaction each, under one
             lock; the data plane gets Execution values from it
fleet        the registry: things, groups, membership, certificates, DeleteThing, tags,
             DescribeEndpoint
control_views  the control plane's wire view of jobs and executions (reads only)
data_views   the data plane's wire view of an execution (plain values in, dicts out)
validate     request validation: botocore's shapes, job documents and policies, statusDetails
common       the account, ARNs, statuses, paging: facts every part shares
errors       ApiError (control plane) and JobsError (data plane)
store        the SQLite schema
policies     timeouts, abortConfig, jobExecutionsRetryConfig (pure rules the model applies)
scheduling   schedulingConfig, maintenance windows (cron), rollout rates (pure)
rollouts     releasing pending targets as executions (rate, schedule, endBehavior)
jobops       UpdateJob, AssociateTargetsWithJob, DeleteJobExecution
templates    job templates (custom and managed), jobTemplateArn resolution
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
