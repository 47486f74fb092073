import remotior_sensus

rs = remotior_sensus.Session(2, 1000)
output = rs.band_sieve(["$DATA/lc/classes2.tif"], 4, "$DATA/out/sieve_positional", True)
print(output.check)
print(output.paths)
rs.close()
