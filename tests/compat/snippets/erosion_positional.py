import remotior_sensus

rs = remotior_sensus.Session(2, 1000)
output = rs.band_erosion(["$DATA/lc/classes2.tif"], [3, 7], 3, "$DATA/out/erosion_positional")
print(output.check)
print(output.paths)
rs.close()
