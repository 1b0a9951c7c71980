"""Where each manifest field's effect is proven: issue 12, "nothing accepted
that does nothing" (``test_schema_fields.py`` walks every schema against it).

``EFFECTS`` maps every field path of ``SPEC_SCHEMAS`` that apply accepts
(``Kind.field.subfield``, camelCase as in manifests) to the most convincing
test that shows what the field *does* (not that it validates or round-trips
through the store): real components (tests/integration, tests/e2e) where one
exists, else a unit test of the pure builder, scheduler or replica decision
that asserts on the field's translated value. A comment marks a proof that is
only partial. Fields refused at apply ("not supported yet") are not listed.

Node ids are ``file::function`` without parametrize brackets. The
``tests/integration/test_mesh.py`` ones are the scenarios of
``tests/mesh_scenarios.py``, which that module star-imports (they run again,
with the docker driver, as ``tests/e2e/test_docker_mesh.py::<same name>``).

This module is data, not a test module (pytest collects ``test_*.py`` only).
"""

from __future__ import annotations

_SCHEDULING = "tests/integration/test_scheduling.py"
_MESH = "tests/integration/test_mesh.py"
_GATEWAY_PLACEMENT = "tests/integration/test_gateway_replicas.py::test_placement_decides_where_a_gateway_runs"
_MTLS = "tests/integration/test_mtls.py"
_EXTERNAL = "tests/integration/test_external_services.py"
_REGISTRATION_RANGES = ("tests/integration/test_registration.py::"
                        "test_a_registration_outside_the_services_ranges_is_permission_denied")
_BUILDER = "tests/unit/test_xds_builder.py"
_SCHEDULER = "tests/unit/test_scheduler.py"
_DOCKER_DRIVER = "tests/e2e/test_docker_driver.py"

_HTTP_CHECK = f"{_SCHEDULING}::test_failing_health_check_restarts_the_instance"
_TOO_LARGE = f"{_SCHEDULING}::test_too_large_is_unschedulable_with_an_explanation"
_ON_THEIR_PORTS = ("tests/e2e/test_docker_scheduling.py::"
                   "test_six_replicas_land_two_per_node_and_answer_on_their_ports")
_ZONE = f"{_SCHEDULING}::test_constraint_puts_everything_on_the_matching_node"
_UPSTREAM_AT_START = ("tests/integration/test_sidecar_start.py::"
                      "test_the_app_starts_only_once_its_envoy_has_its_config")
_WRONG_NAME = f"{_EXTERNAL}::test_a_certificate_without_the_expected_name_is_refused"
_RING_HASH = f"{_MESH}::test_ring_hash_on_a_header_keeps_each_user_on_one_backend"
_POLICY_FIELDS = f"{_BUILDER}::test_policy_reaches_envoy_fields"
_INTENTIONS = f"{_MTLS}::test_intentions_decide_who_may_call_and_what"
_GATEWAY = f"{_MESH}::test_the_gateway_routes_by_host_and_longest_path_prefix"
_GATEWAY_ROUTES = f"{_BUILDER}::test_gateway_routes_hosts_then_longest_prefix_first"
_MOUNTS = ("tests/integration/test_mounts.py::"
           "test_config_map_and_secret_reach_the_app_and_a_change_rolls_it")

EFFECTS: dict[str, str] = {
    # --- Service -------------------------------------------------------------------
    # The app container runs the image and answers /healthz on the published port.
    "Service.image": _ON_THEIR_PORTS,
    # The command's own exit code (3) is what the instance reports.
    "Service.command": f"{_SCHEDULING}::test_crashing_command_shows_crashloop_with_growing_backoff",
    # Driver level only: the test builds the Workload itself. spec.args ->
    # Workload.args (sidecar/runner.py Assignment.workload) and the process
    # driver's argv (*command, *args) have no test; no manifest in tests sets args.
    "Service.args": f"{_DOCKER_DRIVER}::test_command_and_args_override_like_kubernetes",
    # HEALTH_FAIL_FILE from spec.env is what makes the app's /healthz fail.
    "Service.env": _HTTP_CHECK,
    # The value matters with the docker driver (container port the pause
    # publishes); the process driver hands the app a free port of its own and
    # only looks at whether spec.port is set.
    "Service.port": _ON_THEIR_PORTS,
    # grpc -> HTTP RBAC (PERMISSION_DENIED), tcp -> network RBAC (connection closed),
    # in real Envoys. Builder unit: test_xds_builder.py::test_inbound_forwards_to_the_app.
    "Service.protocol": f"{_MTLS}::test_denied_grpc_is_permission_denied_and_denied_tcp_is_closed",
    "Service.resources": _TOO_LARGE,
    # Driver level (Workload.cpu_millis -> NanoCpus, built by the test); the
    # scheduler side is test_scheduler.py::test_feasibility ("cpu short"). No test
    # takes cpu from a manifest to either (placement._capacity, runner), and the
    # process driver enforces no cpu or memory limit at all.
    "Service.resources.cpu": f"{_DOCKER_DRIVER}::test_cpu_and_memory_limits_are_set_on_the_app",
    "Service.resources.memory": _TOO_LARGE,
    "Service.healthCheck": _HTTP_CHECK,
    "Service.healthCheck.http": _HTTP_CHECK,
    # Only /healthz fails while the flag file exists (tests/apps/web.py): the path counts.
    "Service.healthCheck.http.path": _HTTP_CHECK,
    # The instances' reason is the tcp probe's own "tcp ... accepts connections".
    "Service.healthCheck.tcp": f"{_SCHEDULING}::test_tcp_health_check",
    "Service.replicas": f"{_SCHEDULING}::test_six_replicas_land_two_per_node",
    # never and on-failure; always (the default) is the crash-loop test.
    "Service.restartPolicy": f"{_SCHEDULING}::test_restart_policy_lets_finished_instances_rest",
    "Service.placement": _ZONE,
    "Service.placement.constraints": _ZONE,
    "Service.placement.constraints.key": _ZONE,
    # Pure scheduler on model Constraints ("!=", in, not-in, exists, not-exists);
    # the manifest -> Constraint step (controllers/placement.py _request) is
    # covered for the default "=" only, by the integration test above.
    "Service.placement.constraints.operator": f"{_SCHEDULER}::test_feasibility",
    "Service.placement.constraints.value": _ZONE,
    "Service.placement.constraints.values": f"{_SCHEDULER}::test_feasibility",
    # Pure scheduler only, on PlacementRequest fields, from here on; the names are
    # those of tests/unit/test_scheduler.py as the placement rework has it now
    # (required affinity, spread by default, preferred forms). No integration
    # manifest's placement besides constraints changes where instances land.
    "Service.placement.strategy": (
        f"{_SCHEDULER}::test_binpack_fills_a_node_first_counting_the_plan"),
    "Service.placement.affinity": (
        f"{_SCHEDULER}::test_required_affinity_waits_for_its_service_then_follows_it"),
    "Service.placement.antiAffinity": (
        f"{_SCHEDULER}::test_self_anti_affinity_keeps_binpack_replicas_on_distinct_nodes"),
    "Service.placement.preferredAffinity": f"{_SCHEDULER}::test_scoring",
    "Service.placement.preferredAntiAffinity": f"{_SCHEDULER}::test_scoring",
    # The caller's first request, at start, reaches backend through its sidecar.
    "Service.upstreams": _UPSTREAM_AT_START,
    "Service.upstreams.name": _UPSTREAM_AT_START,
    # Unit only, in pieces: spec -> ServiceView (this test), a sidecar of namespace
    # shop bound to default/api (test_xds_builder.py::test_resource_names), a pod's
    # VIPs for another namespace (tests/e2e/test_docker_sidecar.py::test_pod_wiring).
    # No test with real components calls an upstream in another namespace.
    "Service.upstreams.namespace": (
        "tests/unit/test_xds_mesh.py::test_upstreams_default_to_the_services_namespace"),
    # Unit: the outbound listener's port on a pod VIP (and test_pod_wiring's
    # FLOTILLA_UPSTREAM_CACHE=...:6379). Docker pods only: the process driver
    # binds every upstream on a loopback port of its own and ignores the override.
    "Service.upstreams.port": f"{_BUILDER}::test_upstream_port",
    # Pure replica decision on a spec dict; the rolling default with real agents is
    # test_scheduling.py::test_changing_the_template_rolls_instances_without_losing_capacity.
    "Service.update": "tests/unit/test_replicas.py::test_decide",
    "Service.update.strategy": "tests/unit/test_replicas.py::test_decide",
    "Service.external": f"{_EXTERNAL}::test_a_mesh_service_reaches_a_service_registered_in_consul",
    # A registration outside spec.registration.cidrs is PERMISSION_DENIED, none without it.
    "Service.registration": _REGISTRATION_RANGES,
    "Service.registration.cidrs": _REGISTRATION_RANGES,
    # ledger-verified follows the Consul service "ledger" and is answered by it.
    "Service.external.service": f"{_EXTERNAL}::test_a_ca_verifies_the_instances_certificate",
    # Unit (mesh view): tls forces TLS on endpoints Consul does not mark. In the
    # integration test the instances are marked flotilla-tls anyway.
    "Service.external.tls": (
        "tests/unit/test_external.py::"
        "test_the_manifests_tls_makes_every_endpoint_tls_and_its_sni_wins"),
    # Real Envoy: sni wrong.example.com + ca -> fail_verify_san. The SAN check
    # exists only with a ca, so this is also the test where ca does something
    # (test_a_ca_verifies_the_instances_certificate would pass without the ca).
    "Service.external.tls.sni": _WRONG_NAME,
    "Service.external.tls.ca": _WRONG_NAME,
    # --- TrafficPolicy -----------------------------------------------------------------
    # Real Envoys: one backend per x-user header value.
    "TrafficPolicy.destination": _RING_HASH,
    "TrafficPolicy.loadBalancer": _RING_HASH,
    # ring-hash with real components; least-request and random: builder unit only.
    "TrafficPolicy.loadBalancer.algorithm": _RING_HASH,
    "TrafficPolicy.loadBalancer.hashOn": _RING_HASH,
    # For a tcp destination a header cannot be hashed: the builder hashes on the
    # source address instead (test_tcp_upstream_hashes_on_the_source_address).
    "TrafficPolicy.loadBalancer.hashOn.header": _RING_HASH,
    "TrafficPolicy.loadBalancer.hashOn.sourceIP": _POLICY_FIELDS,
    # A real Envoy NACKs connectTimeout 0s: the value reaches it.
    "TrafficPolicy.connectTimeout": (
        f"{_MESH}::test_a_policy_envoy_rejects_is_a_visible_nack_and_traffic_keeps_flowing"),
    # Builder unit only from here on (the proto fields Envoy gets); no test
    # watches a real Envoy time out, retry, trip a breaker or eject a host.
    # requestTimeout, idleTimeout and retries shape the route: a tcp
    # destination has none, so for it they are accepted and do nothing.
    "TrafficPolicy.requestTimeout": _POLICY_FIELDS,
    "TrafficPolicy.idleTimeout": _POLICY_FIELDS,
    "TrafficPolicy.retries": _POLICY_FIELDS,
    "TrafficPolicy.retries.attempts": _POLICY_FIELDS,
    "TrafficPolicy.retries.perTryTimeout": _POLICY_FIELDS,
    "TrafficPolicy.retries.retryOn": _POLICY_FIELDS,
    "TrafficPolicy.circuitBreaker": _POLICY_FIELDS,
    "TrafficPolicy.circuitBreaker.maxConnections": _POLICY_FIELDS,
    "TrafficPolicy.circuitBreaker.maxPendingRequests": _POLICY_FIELDS,
    "TrafficPolicy.circuitBreaker.maxRequests": _POLICY_FIELDS,
    "TrafficPolicy.circuitBreaker.maxRetries": _POLICY_FIELDS,
    "TrafficPolicy.outlierDetection": _POLICY_FIELDS,
    "TrafficPolicy.outlierDetection.consecutive5xx": _POLICY_FIELDS,
    "TrafficPolicy.outlierDetection.interval": _POLICY_FIELDS,
    "TrafficPolicy.outlierDetection.baseEjectionTime": _POLICY_FIELDS,
    "TrafficPolicy.outlierDetection.maxEjectionPercent": _POLICY_FIELDS,
    # --- Intention ------------------------------------------------------------------------
    # Real Envoys, mTLS, default deny: allow intentions L4 and L7.
    "Intention.source": _INTENTIONS,
    "Intention.destination": _INTENTIONS,
    # Only action allow reaches an Envoy in tests; deny intentions are only in
    # tests/unit/test_intentions.py::test_decisions (intentions.decide, the
    # `intentions check` model), which does not cover the RBAC compiler.
    "Intention.action": _INTENTIONS,
    # http rules are compiled for http and grpc destinations only: on a tcp
    # destination an intention with rules never applies.
    "Intention.http": _INTENTIONS,
    "Intention.http.pathPrefix": _INTENTIONS,
    "Intention.http.methods": _INTENTIONS,
    # --- Gateway ------------------------------------------------------------------------------
    "Gateway.listeners": _GATEWAY,
    # Builder unit: names the listener gateway:<name> and route gateway:<gw>:<name>.
    "Gateway.listeners.name": _GATEWAY_ROUTES,
    "Gateway.listeners.port": _GATEWAY,
    # Builder unit: protocol tcp -> TcpProxy to the route's cluster; no gateway in
    # tests with real components has a tcp listener.
    "Gateway.listeners.protocol": _GATEWAY_ROUTES,
    "Gateway.listeners.routes": _GATEWAY,
    "Gateway.listeners.routes.host": _GATEWAY,
    "Gateway.listeners.routes.pathPrefix": _GATEWAY,
    "Gateway.listeners.routes.service": _GATEWAY,
    # Builder unit: a route to admin in namespace ops.
    "Gateway.listeners.routes.namespace": _GATEWAY_ROUTES,
    # --- ConfigMap and Secret -----------------------------------------------------------------
    # Their consumers are Service.mounts and envFrom: the app sees the keys as
    # files and env, and a change rolls it.
    "ConfigMap.data": _MOUNTS,
    # stringData is merged into data on apply (SecretSpec.normalized), so what
    # sources.py decodes is always data: the Secret given as stringData here
    # reaches the app as env and as a 0400 file. No test with real components
    # applies base64 data directly (unit: tests/unit/test_sources.py).
    "Secret.data": _MOUNTS,
    "Secret.stringData": _MOUNTS,
    # --- health checks ---------------------------------------------------------------
    # Real server, agent and app: only the check's own port answers 200.
    "Service.healthCheck.http.port": ("tests/integration/test_health_checks.py::"
        "test_an_http_check_on_its_own_port_is_what_makes_the_instance_healthy"),
    "Service.healthCheck.tcp.port": "tests/unit/test_health.py::test_a_check_with_its_own_port_probes_that_port_not_the_apps",
    "Service.healthCheck.grpc.port": "tests/unit/test_health.py::test_a_check_with_its_own_port_probes_that_port_not_the_apps",
    "Service.healthCheck.grpc": ("tests/integration/test_health_checks.py::"
                                 "test_a_grpc_check_asks_for_the_service_it_names"),
    "Service.healthCheck.grpc.service": ("tests/integration/test_health_checks.py::"
                                         "test_a_grpc_check_asks_for_the_service_it_names"),
    "Service.healthCheck.interval": "tests/unit/test_health.py::test_interval_spaces_the_probes",
    "Service.healthCheck.timeout": "tests/unit/test_health.py::test_a_probe_slower_than_its_timeout_fails",
    "Service.healthCheck.initialDelay": "tests/unit/test_health.py::test_initial_delay_holds_the_first_probe",
    "Service.healthCheck.failureThreshold": (
        "tests/unit/test_health.py::test_failure_threshold_failures_in_a_row_restart_one_fewer_do_not"),
    # --- intentions, L7 on real Envoy (intentions check agrees each time) --------------
    "Intention.http.pathExact": "tests/integration/test_intentions_l7.py::test_path_exact_allows_exactly_that_path",
    "Intention.http.headers": "tests/integration/test_intentions_l7.py::test_each_header_match_allows_only_matching_requests",
    "Intention.http.headers.name": "tests/integration/test_intentions_l7.py::test_each_header_match_allows_only_matching_requests",
    "Intention.http.headers.exact": "tests/integration/test_intentions_l7.py::test_each_header_match_allows_only_matching_requests",
    "Intention.http.headers.prefix": (
        "tests/integration/test_intentions_l7.py::test_each_header_match_allows_only_matching_requests"),
    "Intention.http.headers.regex": "tests/integration/test_intentions_l7.py::test_each_header_match_allows_only_matching_requests",
    "Intention.http.headers.present": (
        "tests/integration/test_intentions_l7.py::test_each_header_match_allows_only_matching_requests"),
    "Intention.description": "tests/integration/test_cli.py::test_describe_shows_an_intentions_description",
    # --- rollouts and drivers, real processes ---------------------------------------------
    "Service.update.maxSurge": ("tests/integration/test_update_strategy.py::"
                                "test_max_surge_2_runs_up_to_two_more_than_replicas"),
    "Service.update.maxUnavailable": ("tests/integration/test_update_strategy.py::"
                                      "test_max_surge_0_max_unavailable_1_never_exceeds_replicas"),
    "Service.driver": ("tests/integration/test_driver.py::"
                       "test_a_declared_driver_no_node_offers_keeps_the_instance_pending"),
    # --- gateways: replicas one per node; each placement field moves where one runs ------
    "Gateway.replicas": ("tests/integration/test_gateway_replicas.py::"
                         "test_two_replicas_run_one_per_node_and_both_answer"),
    "Gateway.placement": _GATEWAY_PLACEMENT,
    "Gateway.placement.constraints": _GATEWAY_PLACEMENT,
    "Gateway.placement.constraints.key": _GATEWAY_PLACEMENT,
    "Gateway.placement.constraints.operator": _GATEWAY_PLACEMENT,
    "Gateway.placement.constraints.value": _GATEWAY_PLACEMENT,
    "Gateway.placement.constraints.values": _GATEWAY_PLACEMENT,
    "Gateway.placement.strategy": _GATEWAY_PLACEMENT,
    "Gateway.placement.affinity": _GATEWAY_PLACEMENT,
    "Gateway.placement.antiAffinity": _GATEWAY_PLACEMENT,
    "Gateway.placement.preferredAffinity": _GATEWAY_PLACEMENT,
    "Gateway.placement.preferredAntiAffinity": _GATEWAY_PLACEMENT,
    "Gateway.placement.spreadBy": _GATEWAY_PLACEMENT,
    # type tls is refused (not supported yet); opaque is what every Secret is
    # mounted and taken env from as.
    "Secret.type": _MOUNTS,
    # --- mounts and envFrom (files with modes, env precedence, a change rolls) ---------
    "Service.mounts": _MOUNTS,
    "Service.mounts.configMap": _MOUNTS,
    "Service.mounts.secret": _MOUNTS,
    "Service.mounts.path": ("tests/e2e/test_docker_mounts.py::"
                            "test_the_files_are_in_the_app_container_read_only_with_their_modes"),
    "Service.envFrom": _MOUNTS,
    "Service.envFrom.configMap": _MOUNTS,
    "Service.envFrom.secret": _MOUNTS,
    # Real server and agents with rack labels: replicas balanced over the values.
    "Service.placement.spreadBy": (
        "tests/integration/test_scheduling.py::"
        "test_spread_by_a_label_balances_its_values_under_binpack"),
}

