"""The project's own tooling, used by the tests, the example project's demo and the
benchmarks alike: throwaway database servers and a broker (``dbservers``), a TCP proxy that
injects faults (``tcpproxy``), network partitions on loopback (``partition``), Django's own
test modules against our ENGINEs (``django_suite``), the wheel's contents check
(``check_wheel``) and process helpers (``processes``). Not part of the distribution."""
