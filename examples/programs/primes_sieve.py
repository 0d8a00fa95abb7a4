# Count the primes below 100,000 (capped like primes.py): a bytearray sieve.
import sys

n = min(int(sys.stdin.readline()), 100_001)
sieve = bytearray([1]) * n
sieve[0:2] = b"\x00\x00"
for p in range(2, int(n ** 0.5) + 1):
    if sieve[p]:
        sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
print(sum(sieve))
