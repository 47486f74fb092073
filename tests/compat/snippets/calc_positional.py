import remotior_sensus

rs = remotior_sensus.Session(2, 1000)
output = rs.band_calc(
    '("nir" - "red") / ("nir" + "red")',
    "$DATA/out/calc_positional/ndvi.tif",
    ["$DATA/s2/S2_B08.tif", "$DATA/s2/S2_B04.tif"],
    ["nir", "red"],
)
print(output.check)
print(output.paths)
rs.close()
