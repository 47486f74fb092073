import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B08.tif", "$DATA/s2/S2_B04.tif"],
    output_path="$DATA/out/calc_where/vegetation.tif",
    expression_string='where(("nir" - "red") / ("nir" + "red") > 0.3, 1, 0)',
    input_name_list=["nir", "red"],
)
print(output.check)
print(output.paths)
rs.close()
