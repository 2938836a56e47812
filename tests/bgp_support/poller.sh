# poller.sh NAMESPACE BIRD_SOCKET: BIRD announces the service address (protocol
# `svc`) while ringlb's /ready answers 200; checked every 200 ms.
ns=$1; ctl=$2; last=
while :; do
  code=$(ip netns exec "$ns" curl -s -m 1 -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/ready)
  if [ "$code" = 200 ]; then want=enable; else want=disable; fi
  if [ "$want" != "$last" ] && birdc -s "$ctl" "$want" svc >/dev/null; then
    echo "$(date +%s.%N) $want (/ready $code)"; last=$want
  fi
  sleep 0.2
done
