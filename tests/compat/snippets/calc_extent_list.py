import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B08.tif", "$DATA/s2/S2_B04.tif"],
    output_path="$DATA/out/calc_extent_list/ndvi.tif",
    expression_string='("nir" - "red") / ("nir" + "red")',
    input_name_list=["nir", "red"],
    extent_list=[500104, 4599797, 500496, 4599503],
)
print(output.check)
print(output.paths)
rs.close()
