# Count the primes below N: trial division (slow, the kind of code models write first).
import sys

n = int(sys.stdin.readline())
count = 0
for k in range(2, n):
    if k > 100_000:
        break
    is_prime = True
    d = 2
    while d * d <= k:
        if k % d == 0:
            is_prime = False
            break
        d += 1
    count += is_prime
print(count)
